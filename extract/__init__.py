"""Stage 1 of jungle: find clips, decode frames frame-exactly, run CNN backbones and
write skip-connection features plus clip metadata to an HDF5 feature store."""
