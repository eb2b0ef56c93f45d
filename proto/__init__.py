"""The gRPC contract: `.proto` files and the Python stubs generated from them."""
