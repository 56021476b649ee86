"""API tokens: the key's SHA-256 and its first characters replace the key itself."""

import hashlib

from django.db import migrations, models


def hash_keys(apps, schema_editor):
    ApiToken = apps.get_model("gallery", "ApiToken")
    for token in ApiToken.objects.all():
        token.key_hash = hashlib.sha256(token.key.encode()).hexdigest()
        token.prefix = token.key[:8]
        token.save(update_fields=["key_hash", "prefix"])


class Migration(migrations.Migration):
    dependencies = [("gallery", "0004_perceptual_hash")]

    operations = [
        migrations.AddField(
            model_name="apitoken", name="key_hash", field=models.CharField(max_length=64, null=True, editable=False)
        ),
        migrations.AddField(
            model_name="apitoken",
            name="prefix",
            field=models.CharField(
                max_length=8, default="", editable=False, help_text="The key's first characters."
            ),
            preserve_default=False,
        ),
        migrations.RunPython(hash_keys, migrations.RunPython.noop),
        migrations.RemoveField(model_name="apitoken", name="key"),
        migrations.AlterField(
            model_name="apitoken",
            name="key_hash",
            field=models.CharField(max_length=64, unique=True, editable=False),
        ),
    ]
