"""Fault tolerance: a dead or failing rank stops the whole job at once, stop signals end it
cleanly with a checkpoint, and replicas are checked for agreement."""
