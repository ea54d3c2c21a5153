"""dyntriton_kv_file plugin (work in progress)."""
