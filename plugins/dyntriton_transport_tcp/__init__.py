"""dyntriton_transport_tcp plugin (work in progress)."""
