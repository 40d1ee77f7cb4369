"""The billing service: backup overview figures and capacity-based billing with a free quota."""
