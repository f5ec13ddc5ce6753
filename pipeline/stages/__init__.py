"""One thin entry point per DVC stage: parse params, call one library function, write outputs."""
