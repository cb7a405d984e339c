"""Generated Protobuf modules of the arena messages; edit the .proto files instead."""
