"""Model card templates (Markdown with `${name}` placeholders), installed as `diffusers_bit.model_card_templates`."""
