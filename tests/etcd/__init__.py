"""Tests of the etcd backend against real etcd 3.4 and 3.5 servers."""
