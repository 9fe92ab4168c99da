#!/usr/bin/env bash
# Copy the browser tests' screenshots that docs/portal.md shows into docs/img/portal/{zh,en}/.
# Usage: scripts/portal-shots.sh SCREENSHOTS_DIR DOCS_IMG_DIR   (run by `make portal-shots`)
set -euo pipefail
from="$1"
to="$2"
rm -rf "$to"
mkdir -p "$to/zh" "$to/en"
copy() {  # copy DIR LANG: each NN-name.png as name.png
  for f in "$from/$1"/*.png; do
    name="$(basename "$f")"
    cp "$f" "$to/$2/${name#*-}"
  done
}
copy the_whole_journey_clicked_through-zh zh
copy the_whole_journey_clicked_through-en en
cp "$from/a_wrong_sms_code_is_refused/02-wrong-code.png" "$to/zh/wrong-code.png"
cp "$from/number_marking_clears_marks_left_by_previous_holders/04-marks.png" "$to/zh/marks.png"
cp "$from/own_release_touches_only_the_selected_binding/04-own-bindings.png" "$to/en/own-bindings.png"
cp "$from/own_release_touches_only_the_selected_binding/05-own-released.png" "$to/en/own-released.png"
cp "$from/a_platform_that_is_down_is_shown_as_such/04-platform-down.png" "$to/en/platform-down.png"
echo "screenshots copied to $to"
