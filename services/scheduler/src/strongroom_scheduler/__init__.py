"""The scheduler service: the fleet of instances, their backup settings, daily schedules and backup jobs."""
