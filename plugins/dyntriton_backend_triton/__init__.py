"""dyntriton_backend_triton plugin (work in progress)."""
