"""The serverless controller: recovers jobs with nobody's laptop open (docs/architecture.md, "The controller").

EC2's own events (events.py) reach `handler.handler` through EventBridge and SQS, plus a schedule tick
every minute that reconciles every job as a backstop; each runs the decision step `spotctl watch` runs
(orchestrator.jobs.step). Torch-free: it ships in the Lambda package without the trainer's extras.
"""
