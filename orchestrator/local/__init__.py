"""The local cloud: the whole product on one machine with no AWS account (`spotctl local up`).

A background process (daemon.py) runs a moto server for EC2, SSM, IAM and S3, seeded with what real
AWS has and moto lacks (aws.py); an instance runner that runs each spotctl instance's real user-data
as a local process with its own IMDSv2 endpoint (runner.py, imds.py); and answers interruption
requests. Prices come from a seeded spot market simulator (market.py) through the same PriceSource
interface as on AWS. client.py is the CLI's side: start, find, stop and talk to it.
"""
