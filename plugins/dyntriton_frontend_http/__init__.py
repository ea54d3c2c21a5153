"""dyntriton_frontend_http plugin (work in progress)."""
