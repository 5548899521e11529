//! A containerd NRI (Node Resource Interface) plugin client: multiplexed ttrpc, registration, events
