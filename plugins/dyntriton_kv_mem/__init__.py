"""dyntriton_kv_mem plugin (work in progress)."""
