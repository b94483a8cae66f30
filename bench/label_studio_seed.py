"""Seed a Label Studio database for `bench/platform_vs_label_studio.py`; run by Label Studio's own
Python (bench/.venv-label-studio), never by alignloop's. It imports nothing of alignloop.

    LS python bench/label_studio_seed.py --annotators 50 --tasks 20000 --candidates 4

The database is the one Label Studio's settings name (DJANGO_DB, POSTGRE_HOST/PORT/NAME/USER).
It applies Label Studio's migrations, then makes one organisation with legacy API tokens on, an
owner, the annotators (members of the organisation, each with a token), one project whose
labelling configuration asks the load's questions (a ranking of the candidates, a 1-5 rating of
each and which are unsafe), and the tasks. It prints one JSON line: the project id, the owner's
token, the annotators' tokens and the task ids.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys


def label_config(candidates: int) -> str:
    """A labelling configuration with the multi-question project's questions."""
    ratings = "\n".join(
        f'  <Rating name="helpfulness_{i}" toName="prompt" maxRating="5"/>' for i in range(candidates)
    )
    choices = "\n".join(f'    <Choice value="{chr(65 + i)}"/>' for i in range(candidates))
    return f"""<View>
  <Text name="prompt" value="$prompt"/>
  <List name="candidates" value="$candidates" title="Responses"/>
  <Ranker name="order" toName="candidates"/>
{ratings}
  <Choices name="unsafe" toName="prompt" choice="multiple">
{choices}
  </Choices>
</View>"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()

    import label_studio

    sys.path.insert(0, str(pathlib.Path(label_studio.__file__).parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from organizations.functions import create_organization
    from projects.models import Project
    from tasks.models import Task
    from users.models import User

    owner = User.objects.create_user(email="owner@bench.local", password="bench-owner-password")
    owner.is_staff = owner.is_superuser = True
    owner.save()
    org = create_organization(title="bench", created_by=owner, legacy_api_tokens_enabled=True)
    owner.active_organization = org
    owner.save(update_fields=["active_organization"])
    tokens = []
    for i in range(args.annotators):
        user = User.objects.create_user(email=f"annotator{i}@bench.local", password=f"bench-password-{i}")
        org.add_user(user)
        user.active_organization = org
        user.save(update_fields=["active_organization"])
        tokens.append(user.auth_token.key)
    project = Project.objects.create(
        title="load", created_by=owner, organization=org, label_config=label_config(args.candidates)
    )
    tasks = Task.objects.bulk_create(
        [
            Task(
                project=project,
                data={
                    "prompt": f"prompt {n}",
                    "candidates": [
                        {"id": str(c), "title": chr(65 + c), "body": f"response {c} to prompt {n}"}
                        for c in range(args.candidates)
                    ],
                },
            )
            for n in range(args.tasks)
        ],
        batch_size=2000,
    )
    print(
        json.dumps(
            {
                "project_id": project.id,
                "owner_token": owner.auth_token.key,
                "tokens": tokens,
                "task_ids": [t.id for t in tasks],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
