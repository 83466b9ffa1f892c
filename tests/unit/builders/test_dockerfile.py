"""Parsing the supported Dockerfile subset."""

from __future__ import annotations

import pytest

from innerloop.builders.dockerfile import Copy, DockerfileError, Unsupported, parse


def lines(*text: str) -> str:
    return "\n".join(text) + "\n"


class TestFrom:
    def test_base(self) -> None:
        assert parse("FROM innerloop.local/python:3.11\n").base == "innerloop.local/python:3.11"

    def test_stage_name_is_dropped_and_case_is_ignored(self) -> None:
        assert parse("from registry:5000/team/base:1 AS app\n").base == "registry:5000/team/base:1"

    def test_defaults(self) -> None:
        r = parse("FROM base\n")
        assert (r.workdir, r.user, r.env, r.labels, r.entrypoint, r.cmd, r.copies, r.exposed) == (
            "",
            "",
            {},
            {},
            None,
            None,
            [],
            [],
        )


class TestWorkdir:
    def test_absolute(self) -> None:
        assert parse(lines("FROM b", "WORKDIR /srv/app")).workdir == "/srv/app"

    def test_relative_without_a_previous_workdir_starts_at_root(self) -> None:
        assert parse(lines("FROM b", "WORKDIR app")).workdir == "/app"

    def test_relative_is_resolved_against_the_previous_one(self) -> None:
        assert parse(lines("FROM b", "WORKDIR /srv", "WORKDIR app", "WORKDIR sub")).workdir == "/srv/app/sub"

    def test_absolute_replaces_the_previous_one(self) -> None:
        assert parse(lines("FROM b", "WORKDIR /srv", "WORKDIR /opt")).workdir == "/opt"


class TestCopy:
    def test_single_file_to_an_absolute_path(self) -> None:
        r = parse(lines("FROM b", "COPY app.py /app/app.py"))
        assert r.copies == [Copy(sources=("app.py",), dest="/app/app.py", line=2)]

    def test_multiple_sources(self) -> None:
        r = parse(lines("FROM b", "COPY a.py b.py lib/ /app/"))
        assert r.copies == [Copy(sources=("a.py", "b.py", "lib/"), dest="/app/", line=2)]

    def test_relative_destination_is_under_the_workdir(self) -> None:
        r = parse(lines("FROM b", "WORKDIR /app", "COPY requirements.txt .", "COPY src src/"))
        assert [c.dest for c in r.copies] == ["/app/.", "/app/src/"]
        assert [c.line for c in r.copies] == [3, 4]

    def test_relative_destination_without_workdir_is_under_root(self) -> None:
        assert parse(lines("FROM b", "COPY x.txt etc/x.txt")).copies[0].dest == "/etc/x.txt"

    def test_exec_form(self) -> None:
        r = parse(lines("FROM b", 'COPY ["my file.txt", "other.txt", "/data/"]'))
        assert r.copies == [Copy(sources=("my file.txt", "other.txt"), dest="/data/", line=2)]

    def test_quoted_shell_form(self) -> None:
        assert parse(lines("FROM b", "COPY 'my file.txt' /data/")).copies[0].sources == ("my file.txt",)

    def test_add_is_a_copy_marked_as_add(self) -> None:
        assert parse(lines("FROM b", "ADD conf /etc/conf")).copies == [
            Copy(sources=("conf",), dest="/etc/conf", line=2, add=True)
        ]

    def test_flags_are_not_sources(self) -> None:
        r = parse(lines("FROM b", "COPY --chown=65532:65532 --chmod=755 run.sh /bin/run.sh"))
        assert r.copies[0].sources == ("run.sh",)

    def test_variables_in_paths(self) -> None:
        r = parse(lines("FROM b", "ARG APP=shop", "ENV ROOT=/srv", "COPY $APP/ ${ROOT}/$APP/"))
        assert r.copies[0] == Copy(sources=("shop/",), dest="/srv/shop/", line=4)


class TestEnv:
    def test_key_value_pairs(self) -> None:
        r = parse(lines("FROM b", 'ENV A=1 B="two words" C='))
        assert r.env == {"A": "1", "B": "two words", "C": ""}

    def test_legacy_form(self) -> None:
        assert parse(lines("FROM b", "ENV GREETING hello   big world")).env == {"GREETING": "hello big world"}

    def test_later_values_win_and_refer_to_earlier_ones(self) -> None:
        r = parse(lines("FROM b", "ENV HOME=/home/app", "ENV DATA=$HOME/data HOME=/root"))
        assert r.env == {"HOME": "/root", "DATA": "/home/app/data"}

    def test_key_without_value_is_an_error(self) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile:2: ENV: expected KEY=value"):
            parse(lines("FROM b", "ENV ONLYKEY"))


class TestArg:
    def test_defaults_and_both_expansion_forms(self) -> None:
        r = parse(
            lines(
                "ARG REG=registry.local:5000", "ARG TAG=1.2", "FROM $REG/base:${TAG}", "ARG TAG", "WORKDIR /opt/${TAG}"
            )
        )
        assert r.base == "registry.local:5000/base:1.2"
        assert r.workdir == "/opt/1.2"

    def test_a_global_arg_is_not_seen_in_a_stage_that_does_not_declare_it(self) -> None:
        assert parse(lines("ARG TAG=1.2", "FROM base:$TAG", "WORKDIR /opt/${TAG}")).workdir == "/opt"

    def test_arg_without_default_expands_to_nothing(self) -> None:
        assert parse(lines("ARG SUFFIX", "FROM base$SUFFIX")).base == "base"

    def test_longer_names_are_not_clobbered_by_shorter_ones(self) -> None:
        r = parse(lines("FROM b", "ARG V=short", "ARG VERSION=long", "LABEL version=$VERSION v=$V"))
        assert r.labels == {"version": "long", "v": "short"}

    def test_env_overrides_an_arg_of_the_same_name(self) -> None:
        r = parse(lines("FROM b", "ARG MODE=arg", "ENV MODE=env", "USER $MODE"))
        assert r.user == "env"

    def test_args_are_not_part_of_the_image_environment(self) -> None:
        assert parse(lines("ARG X=1", "FROM b")).env == {}


class TestEntrypointAndCmd:
    def test_exec_form(self) -> None:
        r = parse(lines("FROM b", 'ENTRYPOINT ["/usr/bin/python3", "/app/app.py"]', 'CMD ["--port", "8080"]'))
        assert r.entrypoint == ["/usr/bin/python3", "/app/app.py"]
        assert r.cmd == ["--port", "8080"]

    def test_shell_form(self) -> None:
        r = parse(lines("FROM b", "ENTRYPOINT exec python3 app.py", "CMD echo hi && sleep 1"))
        assert r.entrypoint == ["/bin/sh", "-c", "exec python3 app.py"]
        assert r.cmd == ["/bin/sh", "-c", "echo hi && sleep 1"]

    def test_variables_are_left_for_the_container_runtime(self) -> None:
        # Docker does not expand variables in ENTRYPOINT and CMD: the shell (or
        # nothing, in exec form) sees them at run time, where a pod may set PORT.
        r = parse(lines("FROM b", "ENV PORT=8080", "ENTRYPOINT serve --port $PORT", 'CMD ["--label", "${PORT}"]'))
        assert r.entrypoint == ["/bin/sh", "-c", "serve --port $PORT"]
        assert r.cmd == ["--label", "${PORT}"]

    def test_cmd_before_entrypoint_in_the_same_file_is_kept(self) -> None:
        r = parse(lines("FROM b", 'CMD ["--verbose"]', 'ENTRYPOINT ["/bin/app"]'))
        assert r.entrypoint == ["/bin/app"]
        assert r.cmd == ["--verbose"]

    def test_text_that_is_not_a_json_array_is_shell_form(self) -> None:
        assert parse(lines("FROM b", 'CMD {"a": 1}')).cmd == ["/bin/sh", "-c", '{"a": 1}']

    def test_last_one_wins(self) -> None:
        assert parse(lines("FROM b", 'CMD ["a"]', 'CMD ["b"]')).cmd == ["b"]

    def test_text_that_is_not_json_is_shell_form_as_in_docker(self) -> None:
        assert parse(lines("FROM b", 'CMD ["unterminated"')).cmd == ["/bin/sh", "-c", '["unterminated"']

    @pytest.mark.parametrize("value", ['["ok", 1]', '["a", ["b"]]'])
    def test_bad_exec_form(self, value: str) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile:3: CMD: "):
            parse(lines("FROM b", "", f"CMD {value}"))


class TestOtherInstructions:
    def test_user_expose_label(self) -> None:
        r = parse(
            lines(
                "FROM b",
                "USER 65532:65532",
                "EXPOSE 8080 9090/udp",
                "EXPOSE 443",
                'LABEL org.opencontainers.image.title="Book shop" team=web',
                "LABEL maintainer someone@example.com",
            )
        )
        assert r.user == "65532:65532"
        assert r.exposed == ["8080", "9090/udp", "443"]
        assert r.labels == {
            "org.opencontainers.image.title": "Book shop",
            "team": "web",
            "maintainer": "someone@example.com",
        }


class TestLayout:
    def test_comments_blank_lines_and_continuations(self) -> None:
        text = lines(
            "# syntax=docker/dockerfile:1",
            "",
            "   # an indented comment",
            "FROM base",
            "",
            "ENV A=1 \\",
            "    B=2 \\",
            "    C=3",
            "COPY a \\",
            "     b \\",
            "     /dst/",
            "USER app",
        )
        r = parse(text)
        assert r.env == {"A": "1", "B": "2", "C": "3"}
        assert r.copies == [Copy(sources=("a", "b"), dest="/dst/", line=9)]
        assert r.user == "app"

    def test_comments_and_blank_lines_inside_a_continuation_are_skipped(self) -> None:
        text = lines(
            "FROM base",
            "ENV A=1 \\",
            "    # B is the second setting",
            "    B=2 \\",
            "",
            "    C=3",
            "USER app",
        )
        r = parse(text)
        assert r.env == {"A": "1", "B": "2", "C": "3"}
        assert r.user == "app"

    def test_continuation_on_the_last_line(self) -> None:
        assert parse("FROM base\nEXPOSE 80 \\\n").exposed == ["80"]

    def test_line_numbers_count_comments_and_blanks(self) -> None:
        text = lines("# comment", "", "FROM b", "# another", "COPY \\", "  x \\", "  /y", "", "RUN true")
        r_text = text.rsplit("RUN", 1)[0]
        assert parse(r_text).copies[0].line == 5
        with pytest.raises(DockerfileError, match=r"^Dockerfile:9: RUN"):
            parse(text)


class TestErrors:
    def test_run_is_refused_with_file_and_line(self) -> None:
        with pytest.raises(DockerfileError) as err:
            parse(lines("FROM b", "WORKDIR /app", "RUN pip install -r requirements.txt"), filename="svc/Dockerfile")
        assert str(err.value) == "svc/Dockerfile:3: RUN needs a real builder"
        assert isinstance(err.value, Unsupported)
        assert (err.value.where, err.value.what) == ("svc/Dockerfile:3", "RUN")

    def test_missing_from(self) -> None:
        with pytest.raises(DockerfileError, match=r"^api/Dockerfile: no FROM line"):
            parse(lines("# only a comment", "COPY a /a"), filename="api/Dockerfile")

    def test_empty_file(self) -> None:
        with pytest.raises(DockerfileError, match="no FROM line"):
            parse("")

    def test_from_without_an_image(self) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile:2: FROM"):
            parse(lines("# base", "FROM   "))

    @pytest.mark.parametrize(
        "instruction", ["HEALTHCHECK CMD true", "VOLUME /data", "STOPSIGNAL SIGINT", 'SHELL ["sh"]']
    )
    def test_instructions_not_modelled_need_a_real_builder(self, instruction: str) -> None:
        with pytest.raises(
            Unsupported, match=rf"^Dockerfile:2: {instruction.split(maxsplit=1)[0]} needs a real builder$"
        ):
            parse(lines("FROM b", instruction))

    def test_misspelled_instruction(self) -> None:
        with pytest.raises(DockerfileError, match=r"^x:3: unsupported instruction COPPY"):
            parse(lines("FROM b", "", "COPPY a /a"), filename="x")

    @pytest.mark.parametrize("copy", ["COPY onlyone", "COPY", "COPY --chown=1:1 a", 'COPY ["a"]'])
    def test_copy_needs_a_source_and_a_destination(self, copy: str) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile:2: COPY needs at least a source and a destination"):
            parse(lines("FROM b", copy))

    def test_unbalanced_quotes(self) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile:2: COPY: "):
            parse(lines("FROM b", "COPY 'a /a"))

    def test_errors_are_value_errors(self) -> None:
        assert issubclass(DockerfileError, ValueError)


def test_an_undefined_variable_is_empty_as_in_docker() -> None:
    recipe = parse("FROM base\nARG FOO=x\nENV A=$FOO_BAR B=${FOO}_BAR C=$FOO\n")
    assert recipe.env == {"A": "", "B": "x_BAR", "C": "x"}


def test_from_platform_of_the_platform_being_built_is_exact() -> None:
    assert parse("FROM --platform=linux/amd64 base:1\n").base == "base:1"
    assert parse("FROM --platform=linux/arm64 base:1\n", platform="linux/arm64").base == "base:1"
    with pytest.raises(Unsupported, match=r"^Dockerfile:1: FROM --platform=linux/arm64 needs a real builder"):
        parse("FROM --platform=linux/arm64 base:1\n")


class TestStagesAndArgs:
    MULTI = lines(
        "ARG BASE=registry.local/base:1",
        "FROM golang AS build",
        "RUN go build",
        "FROM ${BASE} AS app",
        "ARG BASE",
        "ARG MODE=prod",
        "ENV MODE=$MODE FROM=$BASE",
        "COPY app.py /app/",
        "FROM app AS debug",
        "RUN apk add gdb",
    )

    def test_a_target_stage_that_needs_no_other_stage_is_built_alone(self) -> None:
        r = parse(self.MULTI, target="app", build_args={"MODE": "dev"})
        assert (r.base, r.stage, r.base_line) == ("registry.local/base:1", "app", 4)
        assert r.env == {"MODE": "dev", "FROM": "registry.local/base:1"}

    def test_without_a_target_the_last_stage_is_built(self) -> None:
        with pytest.raises(Unsupported, match=r"^Dockerfile:9: FROM app \(a stage built on another stage\)"):
            parse(self.MULTI)

    def test_an_unknown_target(self) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile: no stage named 'test' to build \(stages: build, app"):
            parse(self.MULTI, target="test")

    def test_build_args_override_global_defaults_for_from(self) -> None:
        assert parse(self.MULTI, target="app", build_args={"BASE": "other:2"}).base == "other:2"

    def test_platform_args(self) -> None:
        r = parse(lines("FROM b", "ARG TARGETARCH", "ARG TARGETPLATFORM", "ENV A=$TARGETARCH P=$TARGETPLATFORM"))
        assert r.env == {"A": "amd64", "P": "linux/amd64"}

    def test_several_args_on_one_line_and_defaults_that_use_variables(self) -> None:
        r = parse(lines("FROM b", "ARG A=1 B", "ARG C=${A}x", "ENV A=$A B=$B C=$C"), build_args={"B": "2"})
        assert r.env == {"A": "1", "B": "2", "C": "1x"}

    def test_only_arg_may_come_before_from(self) -> None:
        with pytest.raises(DockerfileError, match=r"^Dockerfile:1: ENV before the first FROM"):
            parse(lines("ENV A=1", "FROM b"))

    def test_default_forms(self) -> None:
        r = parse(lines("FROM b", "ARG SET=x", "ENV A=${UNSET:-fallback} B=${SET:-no} C=${SET:+yes} D=${UNSET:+no}"))
        assert r.env == {"A": "fallback", "B": "x", "C": "yes", "D": ""}

    def test_values_of_one_env_line_see_the_variables_from_before_it(self) -> None:
        assert parse(lines("FROM b", "ENV A=1 B=$A")).env == {"A": "1", "B": ""}


class TestCopyFlags:
    def test_chown_chmod_and_link(self) -> None:
        r = parse(lines("FROM b", "ARG U=65532", "COPY --link --chown=$U:$U --chmod=0640 a /a"))
        assert r.copies == [Copy(sources=("a",), dest="/a", line=3, chown="65532:65532", chmod=0o640)]

    def test_exec_form_with_flags(self) -> None:
        r = parse(lines("FROM b", 'COPY --chown=app ["a b", "/x/"]'))
        assert r.copies == [Copy(sources=("a b",), dest="/x/", line=2, chown="app")]


class TestRefusals:
    @pytest.mark.parametrize(
        ("line", "what"),
        [
            ("COPY --from=build /out /app", "COPY --from"),
            ("COPY --from build /out /app", "COPY --from"),
            ("ADD https://example.com/x.tgz /x", r"ADD of a URL \(https://example.com/x.tgz\)"),
            ("ADD git@github.com:a/b.git /src", r"ADD of a URL \(git@github.com:a/b.git\)"),
            ("COPY --parents a /b", "COPY --parents"),
            ("COPY --exclude=*.md . /b", r"COPY --exclude=\*.md"),
            ("ADD --checksum=sha256:0 a /b", "ADD --checksum=sha256:0"),
            ("COPY --chmod=u+x a /b", r"COPY --chmod=u\+x \(only octal modes are built in\)"),
            ("COPY <<EOF /x", "COPY with a heredoc"),
            ("ENV A=${B/x/y}", r"the variable form \$\{B/x/y\}"),
            ("ENV A='$B'", "ENV with a variable and single quotes or escapes"),
            ("USER \\$HOME", "a variable next to single quotes or escapes"),
            ("ONBUILD RUN x", "ONBUILD"),
        ],
    )
    def test_what_the_builtin_builder_cannot_do_exactly(self, line: str, what: str) -> None:
        with pytest.raises(Unsupported, match=rf"^Dockerfile:2: {what} needs a real builder$"):
            parse(lines("FROM b", line))

    def test_the_escape_directive(self) -> None:
        with pytest.raises(Unsupported, match=r"^Dockerfile:1: the escape parser directive"):
            parse(lines("# escape=`", "FROM b"))

    def test_refusals_are_dockerfile_errors_with_where_and_what(self) -> None:
        with pytest.raises(DockerfileError) as err:
            parse(lines("FROM b", "RUN x"), filename="api/Dockerfile")
        assert isinstance(err.value, Unsupported)
        assert (err.value.where, err.value.what) == ("api/Dockerfile:2", "RUN")
