"""Code that runs inside Spark applications (driver and executors): the session and command
line, the lake, the id index, the landing parser, the CG ALS driver and the numba kernels."""
