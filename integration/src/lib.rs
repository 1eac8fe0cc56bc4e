//! local-cluster and the end-to-end suite: the whole fleet on one machine.
