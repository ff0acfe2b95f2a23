"""The Slicer side of the extension: MRML in and out (`mrml_bridge`), the logic shared by the module panel
and the Segment Editor effect (`logic`), and the effect itself (`SegmentEditorEffect.py`, loaded by Slicer)."""
