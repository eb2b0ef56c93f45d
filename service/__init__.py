"""The EdgeSAM segmentation microservice: one core (`service.core`), thin transports over it."""
