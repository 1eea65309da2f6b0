"""A job file on S3 is untrusted input too: `spotctl validate s3://...` reads at most the size limit
(a ranged GET), and a missing key under S3's 403-for-missing regime is still "no such file"."""

from __future__ import annotations

import boto3

from trainer.job import bounded_yaml

VALID = b"name: demo\nstorage: s3://bucket/x\ntrain:\n  model: {name: resnet18, weights: null}\n  data: {train: s3://bucket/d}\n"


def test_a_job_file_on_s3_is_read_within_the_limits(s3_bucket, s3_denies_missing_keys, spotctl):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="jobs/ok.yaml", Body=VALID)
    s3.put_object(Bucket=s3_bucket, Key="jobs/big.yaml", Body=VALID + b"#" * (8 << 20))
    s3.put_object(Bucket=s3_bucket, Key="jobs/nul.yaml", Body=VALID + b"extra: \x00\n")
    assert spotctl("validate", f"s3://{s3_bucket}/jobs/ok.yaml")[0] == 0

    code, out, err = spotctl("validate", f"s3://{s3_bucket}/jobs/big.yaml")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"s3://{s3_bucket}/jobs/big.yaml: is too large for a job file (more than {bounded_yaml.MAX_BYTES} bytes;"
        " the limit is 256 KiB); is it the right file?",
        f"error: s3://{s3_bucket}/jobs/big.yaml is not a valid job spec (1 problem)",
    ]
    code, _, err = spotctl("validate", f"s3://{s3_bucket}/jobs/nul.yaml")
    assert (code, err.splitlines()[0]) == (
        2,
        f"s3://{s3_bucket}/jobs/nul.yaml:6: control character \\x00 at column 8; a job file is text: remove it",
    )
    code, _, err = spotctl("validate", f"s3://{s3_bucket}/jobs/missing.yaml")
    assert (code, err.splitlines()[0]) == (
        2,
        f"s3://{s3_bucket}/jobs/missing.yaml: no such file; check the path (examples/ has job files to start from)",
    )
