"""The gRPC stubs generated from proto/edgesam/v1/segmentation.proto, for this client, the
server and any other Python code (the one place they are imported from).

    from edgesam_client.grpc_stubs import segmentation_pb2 as pb
    from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc

The descriptor keeps its canonical file name `edgesam/v1/segmentation.proto` (what gRPC
reflection shows and other languages import); only the Python module path is ours.
"""

from edgesam_client._proto.edgesam.v1 import segmentation_pb2, segmentation_pb2_grpc

__all__ = ["segmentation_pb2", "segmentation_pb2_grpc"]
