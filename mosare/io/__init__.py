"""Reading and writing: tables, reports, HDF5 features, safetensors checkpoints, atomic writes."""
