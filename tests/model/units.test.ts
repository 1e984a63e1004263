import { parseMemoryMiB } from "../../provider/model/units";

test.each([
  [256, 256],
  ["256MiB", 256],
  ["256M", 256],
  ["256 mib", 256],
  ["2G", 2048],
  ["4GiB", 4096],
  ["1.5GiB", 1536],
  ["524288KiB", 512],
  ["1T", 1048576],
])("%p is %p MiB", (input, mib) => {
  expect(parseMemoryMiB(input)).toBe(mib);
});

test.each([["4XB"], ["MiB"], [""], ["-1G"], ["1.3M"], ["100KiB"], ["12B"]])("%p is refused with what was expected", (input) => {
  expect(() => parseMemoryMiB(input)).toThrow(/expected/);
});
