"""Fault tolerance: a dead or failing rank stops the whole job at once, signals stop it cleanly, replicas are checked for agreement."""
