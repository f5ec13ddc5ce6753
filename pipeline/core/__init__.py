"""Core plumbing: the config schema (the one home of every default and choice), typed errors, atomic
artifacts, compute backends, the units table and the study layout (every output path, the stage graph,
``load_result``). Imports nothing else from the project."""
