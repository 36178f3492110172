"""Architecture presets (JSON configs only), installed as `diffusers_bit.preset_data`."""
