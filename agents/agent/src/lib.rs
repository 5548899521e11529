//! berth's node agent: NRI plugin (file logs, faketime), log cleanup, gRPC API server
