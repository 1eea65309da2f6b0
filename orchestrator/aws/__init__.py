"""Everything that speaks to AWS: the clients and how their errors are classified (clients), EC2's
instances and launches (instances, ec2), offers and prices, and the CloudFormation setup (infra)."""
