"""Bundled resources (style sheet, icons, presets, screenshots), installed as `bitsmith.resources`."""
