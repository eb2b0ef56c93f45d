"""The gRPC contract: the `.proto` files and their stub generator (`python -m proto.generate`).

Not installed by any wheel (`proto` is proto-plus's import name); this file only lets the
generator run from a checkout even where proto-plus is installed too. The generated Python
stubs live in the client package: clients/python/edgesam_client/_proto/."""
