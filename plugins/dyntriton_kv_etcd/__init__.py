"""dyntriton_kv_etcd plugin (work in progress)."""
