"""Generated gRPC stubs (`python -m proto.generate` writes them; never edit by hand).

Import them through `edgesam_client.grpc_stubs`. They live inside this package so that no
top-level `proto` or `edgesam` import name is claimed (`proto` is proto-plus's)."""
