# Host build (native gcc): the reference for bit-identity. Nothing to set beyond the compiler.
set(CMAKE_C_COMPILER gcc)
