//! Fixed-IP IPAM: rack-aware pools, sticky addresses, hold periods, history, GC; local and etcd stores.
//!
//! Entry points:
//! - [`IpamConfig`] — the network config's `ipam` object (keys in `cni/ipam/README.md`);
//! - [`open`] — the [`Allocator`] a config describes (what berth-cni and berth-ipam call);
//! - [`Ipam`] — the same allocator with the admin calls (list, show, history, reserve, free,
//!   reconcile) the agent API uses.
//!
//! Layers: [`logic`] decides (pure, over a snapshot, with an injected time), [`store`] commits
//! atomically (local files, etcd, memory), [`ipam`] ties them to a [`clock`] and a [`node`].

#![forbid(unsafe_code)]

pub mod allocator;
pub mod clock;
pub mod config;
pub mod error;
pub mod ipam;
pub mod logic;
pub mod node;
pub mod pool;
pub mod state;
pub mod store;
pub mod testsupport;
pub mod view;

pub use allocator::{
    AllocateRequest, Allocation, Allocator, Attachment, GcReport, PodIdentity, RouteSpec,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{EtcdAuth, EtcdTls, IpamConfig, PoolConfig, StickyDefault, StoreConfig};
pub use error::IpamError;
pub use ipam::{Ipam, Reservation, open, open_store};
pub use node::NodeInfo;
pub use pool::Family;
pub use state::{Event, EventKind, HistoryQuery, Lease, LeaseState, Sticky};
pub use store::Store;
pub use view::LeaseView;
