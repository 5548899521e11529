//! berth-ipam: the fixed-IP IPAM library as a standalone CNI IPAM plugin
