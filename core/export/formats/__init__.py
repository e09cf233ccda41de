"""One file per export format, each calling `registry.register_format` when imported.

`registry.export_formats()` imports every module here, so a new format is one new file: its
writer, plan warnings, reader verdicts, model card text and size estimate (see native.py
for the smallest). Files here stay torch-free (the window imports them for its menus and
warnings); a writer imports torch, or its own writer module, when it is called.
"""
