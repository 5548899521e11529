//! Fixed-IP IPAM: rack-aware pools, sticky addresses, hold periods, history, GC; local and etcd stores
