"""moto's server for tests/backend_aws.rs, with signature checking on.

Usage: python moto_server.py REGION...   (run with the venv of scripts/peers/moto.sh)

Starts moto on 127.0.0.1 on a free port, creates an IAM user with an `ec2:*` policy and an
access key (the INITIAL_NO_AUTH_ACTION_COUNT=3 free calls; every later request must be
signed by a known key), picks an AMI that exists in every REGION, prints one JSON line
{endpoint, access_key_id, secret_access_key, image_id} and serves until stdin closes
(the test process exiting closes it, so the server never outlives the tests).
"""

import json
import os
import sys

os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
for flag in ("MOTO_ENABLE_AMI_VALIDATION", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "MOTO_ENABLE_KEYPAIR_VALIDATION"):
    os.environ[flag] = "1"

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

regions = sys.argv[1:] or ["us-east-1"]
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"

iam = boto3.client("iam", endpoint_url=endpoint, region_name=regions[0], aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="kpool")
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}
iam.put_user_policy(UserName="kpool", PolicyName="ec2", PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="kpool")["AccessKey"]

common = None
for region in regions:
    ec2 = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    images = {i["ImageId"]: i.get("Name", "") for i in ec2.describe_images(Owners=["amazon"])["Images"]}
    common = images if common is None else {k: v for k, v in common.items() if k in images}
linux = sorted(k for k, v in common.items() if "ubuntu" in v.lower() or "amzn" in v.lower()) or sorted(common)
if not linux:
    sys.exit(f"no AMI common to {regions}")

print(
    json.dumps(
        {
            "endpoint": endpoint,
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
            "image_id": linux[0],
        }
    ),
    flush=True,
)
sys.stdin.read()
server.stop()
