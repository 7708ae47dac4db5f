"""`lmscore-lm-eval`: lm-eval's own command line with the `lmscore` model registered."""

import lmscore_lm_eval  # noqa: F401  (registers the model class)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
