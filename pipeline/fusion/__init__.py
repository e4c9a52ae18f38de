"""The model library: fusion modules, losses, presets' modules and the run artefact; imports no job."""
