"""dyntriton_transport_inproc plugin (work in progress)."""
