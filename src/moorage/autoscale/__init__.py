"""Target-tracking autoscaling of endpoint variants.

``target_tracking`` decides (pure functions over datapoints, capacities and times); ``controller``
runs the decisions every metrics period against live pools and records each as a scaling activity.
The Application Auto Scaling API that configures it lives in ``control/scaling.py``.
"""
