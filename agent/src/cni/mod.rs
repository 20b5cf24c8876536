//! CNI runtime: the agent as a CNI caller (filled by the CNI runtime work).
