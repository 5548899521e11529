//! berth's CNI plugin: bridge and macvlan underlay networking with several NICs per pod
