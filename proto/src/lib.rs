//! berth's agent gRPC API (tonic/prost)
