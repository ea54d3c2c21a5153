"""dyntriton_frontend_kserve_grpc plugin (work in progress)."""
