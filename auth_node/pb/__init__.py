"""Generated gRPC code for proto/authsim.proto (scripts/gen_proto); do not edit."""
