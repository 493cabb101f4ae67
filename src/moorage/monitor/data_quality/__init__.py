"""SageMaker's DataQuality monitor, in Deequ's three steps: :mod:`.profile`, :mod:`.suggest`, :mod:`.verify`
(with :mod:`.drift_tests` beside the verify step), and :mod:`.execution`, one scheduled job over an
endpoint's captured traffic.
"""
